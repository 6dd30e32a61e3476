//! Pure parsers and validators for firmware files.
