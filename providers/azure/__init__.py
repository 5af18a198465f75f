"""Microsoft Azure, everything dqlctl knows about it in one folder.

- ``compute``: Spot/regular GPU VMs reached over SSH, one resource group per run
  (``AzureProvider``).
- ``storage``: the ``az://`` backend of the storage registry (``AzureStore``).
- ``prices``: live prices from the Azure Retail Prices API.

Imports nothing: the registries name these modules as import strings, and each module imports
its Azure SDK only when it is used, so opening an ``az://`` URI never loads the compute side.
"""
