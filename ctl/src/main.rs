//! otactl
fn main() {}
