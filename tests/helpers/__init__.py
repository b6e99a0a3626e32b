"""Test helpers: real peers (gpg, TLS server, registry) and image builders."""
