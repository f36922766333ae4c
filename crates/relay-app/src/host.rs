//! Host adapters (std): see the submodules.
