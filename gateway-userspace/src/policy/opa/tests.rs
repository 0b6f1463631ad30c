//! Unit tests of the opa policy: result forms, the input document.
