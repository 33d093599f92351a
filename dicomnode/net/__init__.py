"""DICOM networking: Upper Layer PDUs, association control, the listener and the requestor.

The bottom stage: it imports nothing else of the node (``tests/node/test_layout.py``).
Everything else reaches the wire through it: the receiver through the listener (``scp``), to
which it plugs in with a ``handler.Handler``, and delivery through the requestor (``scu``).

- ``ul``: PDU framing and reading with deadlines, the fixed-size PDUs, P-DATA-TF, command sets;
- ``acse``: A-ASSOCIATE-RQ/AC, one codec for both directions, and the negotiation;
- ``identity``: our Implementation Class UID and Version Name;
- ``handler``: what the listener asks the application, and an access policy;
- ``limits``: pending, refused-address and association slots shared by listener processes;
- ``tls``: server and client TLS contexts.
"""
