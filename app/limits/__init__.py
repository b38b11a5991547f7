"""Rate limits shared by every process of the fleet, kept in Postgres.

`budget` holds the arithmetic (pure, no database): the rate and burst that keep any
window of time under a limit, and the priorities of the work that shares it. `gcra`
holds the buckets themselves, one row per limited thing, and the limiters built on them.
"""
