"""The spec's vocabulary (``Field``, ``SpecError``) and the sections the mode and fault
registries share (the Exchange organisation, the HTTP world). Below the registries, so
they can declare their own spec keys with it.
"""
