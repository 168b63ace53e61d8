/// mimalloc keeps freed blocks for reuse; with glibc's allocator every 1 MiB transfer block was
/// a fresh mapping, faulted in page by page (measured: about a tenth of a put's CPU time).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    letl_node::cli::main()
}
