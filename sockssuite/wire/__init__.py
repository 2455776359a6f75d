"""Sans-IO codecs: bytes in, typed records out.  Nothing here imports Twisted."""
