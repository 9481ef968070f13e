"""HTTP API (aiohttp): routes, authentication, the error shape, the app factory.

Talks to etcd only through `federation.store`. Every error leaves as
`{"error": {"code", "message", "details"}}`; no traceback ever reaches a client.
"""
