fn main() {
    println!("cargo:rustc-link-arg=-Tlinkall.x");
}
