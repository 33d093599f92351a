"""Several machines: receivers publish job ids to Celery on RabbitMQ, workers claim them.

PostgreSQL stays the one record of series, jobs, events, the outbox and the registry; the broker
carries job ids only, published after the job's row is committed. A worker claims its job in
the database with a lease (``leases``), so the broker never decides who runs what, and losing
or restarting the broker loses no job: the ``reconciler`` (in ``serve``) publishes again any
queued job that has no live lease and no message in the broker. Nothing here runs on a single
machine (the default): there ``dicomnode.process.runner`` claims jobs in-process.
"""
