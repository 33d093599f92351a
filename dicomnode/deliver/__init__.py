"""Delivery: the outbox and the senders that empty it into the destinations, exactly once.

Imports ``net`` (the requestor); never ``receive`` or ``process``.
"""
