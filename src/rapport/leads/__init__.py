"""Leads: lead rules (``rules``), lead records and ``fire`` (``records``), routing to channels
and sales teams (``routing``). ``records.fire`` is the entry point of the stream engine and the
offline runner; docs/leads.md describes the whole."""

from rapport.leads.records import LeadOut, fire
from rapport.leads.rules import LeadRule

__all__ = ["LeadOut", "LeadRule", "fire"]
