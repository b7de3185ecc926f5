"""Durable state: counters for limits and budgets, flags (kill switch), approvals."""

from bastion.state._store import Approval, SQLiteStore, StateStore, open_store

__all__ = ["Approval", "SQLiteStore", "StateStore", "open_store"]
