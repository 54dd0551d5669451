"""Destinations: what changed in the store, forwarded to a customer-data platform over HTTP.

Not wired into sync files or the pipeline yet: `profile_changes.py` is the input, `mparticle.py` and
`amplitude.py` encode it in each platform's shape, `sender.py` delivers the requests.
"""
