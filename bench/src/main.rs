//! `vmem-bench`: vmem-core against its peers, printed as figures.
//!
//! `vmem-bench [--quick|--full] [--only W,..] [--peers P,..] [--page FILE]
//! [--svg FILE]`: runs the workloads of issue 7 with progress on stderr,
//! prints the tables on stdout, and (with `--page`/`--svg`) writes the docs'
//! performance page and the churn plot. `ci/bench` is the usual way to run
//! it. The workloads are in [`workloads`] (the range peers in [`peers`], the
//! heaps in [`objects`]); the page and plot are written by [`page`].

mod objects;
mod page;
mod peers;
mod vmm;
mod workloads;

use clap::Parser;

use workloads::progress;

/// vmem-core against its peers: churn, fragmentation, aligned requests,
/// IDs, heaps and metadata, printed as the performance page's tables.
#[derive(Parser)]
#[command(name = "vmem-bench")]
struct Args {
    /// 1k, 10k, 100k live ranges, short caps (the default)
    #[arg(long, overrides_with = "full")]
    quick: bool,
    /// adds 1M live ranges, longer caps
    #[arg(long, overrides_with = "quick")]
    full: bool,
    /// workloads to run: churn, ids, aligned, heaps, threads, vmm
    #[arg(long, value_name = "W,..", value_delimiter = ',')]
    only: Option<Vec<String>>,
    /// range peers to run, by table name (vmem-core, vmem 1.0, vm-allocator,
    /// free-list, range-alloc, offset-allocator)
    #[arg(long, value_name = "P,..", value_delimiter = ',')]
    peers: Option<Vec<String>>,
    /// write the performance page's tables to FILE
    #[arg(long, value_name = "FILE")]
    page: Option<String>,
    /// write the churn plot to FILE
    #[arg(long, value_name = "FILE")]
    svg: Option<String>,
}

fn main() {
    let args = Args::parse();
    let results = workloads::run(&workloads::Plan {
        // The later of `--quick` and `--full` wins; neither means quick.
        full: args.full && !args.quick,
        only: args.only,
        peers: args.peers,
    });
    let md = page::render(&results);
    println!("{md}");
    if let Some(path) = args.page {
        std::fs::write(&path, &md).expect("write page");
        progress(&format!("wrote {path}"));
    }
    if let Some(path) = args.svg.filter(|_| !results.churns.is_empty()) {
        page::plot(&path, &results.churns).expect("plot");
        progress(&format!("wrote {path}"));
    }
}
