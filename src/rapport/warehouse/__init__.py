"""The warehouse: events, profile slices and items in DuckDB, through Ibis."""

from rapport.warehouse.store import Warehouse, WarehouseBusy

__all__ = ["Warehouse", "WarehouseBusy"]
