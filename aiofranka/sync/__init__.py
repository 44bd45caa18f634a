"""The synchronous wing: a plain thread-based policy loop (:mod:`aiofranka.sync.session`).

See docs/session.md.
"""
