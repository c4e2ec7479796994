//! Names the ABI's types as abi_stable has always recorded them: package `castor-abi`.
//!
//! abi_stable records, in every `StableAbi` type's layout, the package that defines it
//! (`CARGO_PKG_NAME`) and its version, and a worker refuses a library whose types name
//! another package. These types were defined in the `castor-abi` package until they moved
//! into this crate of their own; keeping the recorded name keeps every library built
//! since then loading (the version recorded is this crate's, the plugin ABI version).

fn main() {
    println!("cargo:rustc-env=CARGO_PKG_NAME=castor-abi");
}
