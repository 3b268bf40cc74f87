"""OneID: identifiers from every source resolved to one person each (docs/identity.md).

``config`` holds the user's rules, ``graph`` the resolution algorithm (pure, in memory),
``resolve`` runs it over the warehouse, ``profile`` builds the 360° view, ``survivorship``
merges per-source values, ``matching`` proposes probabilistic links (Splink).
"""
