"""The 1 kHz loop: the Controller, its command table, who serves each cycle, and the guardian.

See docs/architecture.md for the wings of the package and docs/controller.md
for the Controller itself.
"""
