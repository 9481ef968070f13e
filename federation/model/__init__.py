"""Data models shared by every layer: validated on the way in, serialised as JSON to etcd.

Pure: no I/O. Every name that becomes part of an etcd key is validated here first. The
jurisdiction catalogue (`jurisdictions`: ISO 3166-1 countries, built-in groups with
dated memberships) is data too and lives here, so models validate countries and group
references without importing the residency engine. Reading YAML as bounded plain data
(`safe_yaml`) lives here too: the API and the CLI share it.
"""
