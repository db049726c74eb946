//! The mesh DNS server: names of mesh services answered locally, everything else forwarded.
