"""The local platform: runs a fleet from one spec file (``shoal up``), and its tools.

The platform imports the chassis; the chassis never imports the platform.
"""
