"""Segments: audiences, segmentations (with the MECE check), the lifecycle and the AARRR
funnel, over one bitmap index of person sets (``bitmaps``) that answers audience sizes while
a marketer edits. Definitions are ``segments`` rows; members are ``segment_members`` rows and
bitmaps, written together (``store.write_members``)."""
