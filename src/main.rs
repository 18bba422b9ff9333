fn main() {
    std::process::exit(gradwatch::cli::main());
}
