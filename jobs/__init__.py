"""RQ entry points. Each takes ids, logs its job id and lets failures raise."""
