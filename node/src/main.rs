fn main() -> std::process::ExitCode {
    letl_node::cli::main()
}
