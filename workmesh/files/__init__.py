"""File intake and refer-key rotation (issue 7); see docs/files.md.

``workmesh.files.capability.FilesCapability`` is the capability and
``workmesh.files.settings.FilesSettings`` its settings. This module imports nothing, so the
CLI can load ``workmesh.files.cli`` without building the rest.
"""
