"""control_loop/: the clock and the hands. Fixed-rate ticking (Ray actor), AsyncFC futures, latency statistics and reports.

Modules (imported on demand; this package imports nothing heavy):

* ``rate``     ``RateKeeper``: absolute deadlines ``t0 + k*period``, missed periods skipped and counted;
* ``loop``     ``ControlLoop``: one tick = newest observation -> ``decide`` over ZMQ -> dispatch; every
               tick recorded with one outcome (ok, late, fallback, skipped, error);
* ``records``, ``stats``, ``report``: tick records, percentiles/rate/jitter/drift, report.json + plots;
* ``world``    ``make_world(env_spec)``: env + real-time stepping + actuator lanes + fallbacks;
* ``actor``    ``start_loop_actor``: the loop as a Ray actor;
* ``config``   ``RunConfig`` + ``load_run_config`` (configs/run*.yaml, validated);
* ``runner``   ``run_job(cfg)``: what ``tickcall run`` does (service + loop + report);
* ``futures``  ``AsyncFC``: dispatch calls to actuators without waiting (its own package).

    from tickcall.control_loop.config import load_run_config
    from tickcall.control_loop.runner import run_job
    outcome = run_job(load_run_config("configs/run-noop.yaml", {"duration_s": 10}))
    print(outcome.report["outcomes"], outcome.paths["report"])
"""
