"""DICOM networking: Upper Layer PDUs, association control, the listener and the requestor.

The bottom stage: it imports nothing else of the node. Everything else reaches the wire
through it (the receiver through the listener, delivery through the requestor).
"""
