"""Bounds shared by the API's query parameters.

Offsets go to the stores as 64-bit integers (PostgreSQL ``bigint``, SQLite ``INTEGER``): a
larger one must be a 422 naming the parameter, not the store's overflow as a 500.
"""

MAX_OFFSET = 2**63 - 1
