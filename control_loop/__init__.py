"""control_loop/: the clock and the hands. Fixed-rate ticking (Ray actor), AsyncFC futures, latency statistics and reports.

Modules (imported on demand; this package imports nothing heavy):

* ``loop``     ``ControlLoop`` (paced by ``tickcall.timing.RateKeeper``): one tick = newest observation
               -> ``decide`` over ZMQ -> dispatch; every tick recorded with one
               outcome (ok, late, fallback, skipped, error);
* ``records``, ``stats``, ``report``: tick records, percentiles/rate/jitter/drift, report.json + plots;
* ``world``    the ``World`` and ``Observation`` protocols the loop drives (worlds are built by the
               composition root, ``tickcall.world``, and implemented in ``tickcall.envs``);
* ``actor``    ``start_loop_actor``: the loop as a Ray actor;
* ``config``   ``RunConfig`` + ``load_run_config`` (configs/run*.yaml, validated);
* ``futures``  ``AsyncFC``: dispatch calls to actuators without waiting (its own package).

This room imports ``tickcall.agent`` (the policy client) and ``tickcall.models`` only; what ``tickcall
run`` does end to end (service + loop + world + report) is ``tickcall.job.run_job``.
"""
