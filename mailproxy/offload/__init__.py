"""Large-file offload (contract §11): attachments above a tenant's threshold are warned
about, refused, or uploaded to the tenant's storage and replaced by a download link.

`config` reads `large_file_config`; `storage` is the port and its backends (file://, s3://);
`links` signs our /download links; `footer` writes the link list into the bodies;
`service.Offloader` applies the policy at send time; `http` serves the download route.
"""
