"""All of the server's cryptography for data at rest: keys, envelope encryption and blind indexes.

Only this package imports ``cryptography``. ``kms`` holds the key-encryption keys (KEKs): a local key file
or HashiCorp Vault Transit; ``envelope`` wraps one data key per resource version and encrypts fields with
it (AES-256-GCM, with associated data binding each ciphertext to its place); ``blind`` derives
per-parameter HMAC keys and computes the keyed hashes that let search find protected values.
"""
