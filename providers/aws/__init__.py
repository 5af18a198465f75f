"""Amazon Web Services, everything dqlctl knows about it in one folder.

- ``compute``: EC2 spot/on-demand GPU VMs reached over SSH (``AwsProvider``).
- ``storage``: the ``s3://`` backend of the storage registry (``S3Store``).
- ``prices``: live prices from the AWS Price List and spot price history APIs.
- ``images``: pushing the engine image to ECR (the ``IMAGE_REGISTRY`` capability).

Imports nothing: the registries (``providers.COMPUTE_PROVIDERS``, ``providers.storage.STORES``,
``providers.prices.refresh.MODULES``) name these modules as import strings, and each module
imports boto3 only when it is used, so opening an ``s3://`` URI never loads the compute side.
"""
