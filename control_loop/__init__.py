"""control_loop/: the clock and the hands. Fixed-rate ticking (Ray actor), AsyncFC futures, latency statistics and reports."""
