"""Lethe's HTTP service: BentoML app, admin API, job store and job worker."""
