"""Data models shared by every layer: validated on the way in, serialised as JSON to etcd.

Pure: no I/O. Every name that becomes part of an etcd key is validated here first.
"""
