"""Reconciliation of the event stream against the machines' own meters (docs/reconciliation.md).

Sans-I/O: no trio, no outbox; gateway/capture.py feeds it what it recorded and records what it
concludes."""

from gateway.reconcile.core import Cause, MachineReconciler, Observation, Reconciler, Verdict

__all__ = ["Cause", "MachineReconciler", "Observation", "Reconciler", "Verdict"]
