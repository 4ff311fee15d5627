"""``make stress``: the library under load, faults and hostile input, one script per part.

``load``, ``sigkill``, ``redis_faults``, ``cluster``, ``fuzz`` and ``resources``; each
runs as ``python stress/PART.py [--quick]``, starts and stops the servers it needs,
prints its figures and exits 1 on a broken invariant.  ``app`` is the example app
they load, ``loadgen`` the multi-process browser load, ``common`` what they share.
"""
