"""Live classification on the instrument's link: wire session, journal, archive, runner.

``session`` turns bytes into samples (pure logic), ``journal`` commits every result to SQLite
(WAL) before it is reported, ``archive`` keeps every frame of every sample on disk so that
``edgehema replay`` reproduces a result exactly, and ``runner`` ties them to a pyserial port.
"""
