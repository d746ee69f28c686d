"""Model images: build (``package``), push, pull, sign, verify and show.

The reading side (references, registry client, layout reading, signature verification) lives
in ``edgekit_agent.oci`` so that a device runs the same code; this package adds what only the
central side does: building images, uploading, signing with a private key.
"""
