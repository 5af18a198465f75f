"""Google Cloud, everything dqlctl knows about it in one folder.

- ``compute``: Compute Engine Spot/on-demand GPU VMs reached over SSH (``GcpProvider``).
- ``storage``: the ``gs://`` backend of the storage registry (``GcsStore``).
- ``prices``: live prices from the Cloud Billing Catalog API.

Imports nothing: the registries name these modules as import strings, and each module imports
its Google SDK only when it is used, so opening a ``gs://`` URI never loads the compute side.
"""
