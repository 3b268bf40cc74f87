"""One condition language, two compilers (DESIGN.md): ``model`` (the tree and its JSON form),
``text`` (the readable form), ``validate`` (against the tracking plan), ``to_ibis`` (batch),
``to_stream`` (per event) and ``reference`` (the plain interpreter both must agree with)."""
