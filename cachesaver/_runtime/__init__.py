"""Private async plumbing the stages and clients run on (import from the modules, not from here).

* :mod:`~cachesaver._runtime.jobs`: ``BackgroundTasks`` (work that outlives the call that
  started it, owned by a stage and joined at close) and ``Outcome`` (a one-shot result slot);
* :mod:`~cachesaver._runtime.collector`: ``PassCollector`` (the work that arrives in one pass of
  the event loop, handled in one call);
* :mod:`~cachesaver._runtime.loop_thread`: ``LoopThread`` (a private event loop thread for the
  blocking drop-in clients);
* :mod:`~cachesaver._runtime.checks`: argument checks shared by stages and backends.
"""
