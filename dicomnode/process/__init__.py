"""Processing: routing decides a series' fate, jobs record it, the runner and its workers
enhance it, the registry says which model does.

Imports ``deliver`` (results go to the outbox); never ``receive`` or ``net``.
"""
