//! The `netsy` command line: flags and environment in, a running node out.

use std::process::ExitCode;
use std::sync::Arc;

use netsy::config;
use netsy::node::status::RoleCell;

const USAGE: &str = "usage: netsy [--dev] [--config FILE] [-v|--verbose]
       netsy --validate FILE
       netsy --version
       netsy inspect FILE | netsy inspect --config FILE OBJECT-KEY
       netsy certs --cluster ID --node ID [--node ID]... [--client NAME]... [--host HOST]... --out DIR [--days N]

  --dev            one node, plain HTTP/2 on 127.0.0.1:2378, data in ./netsy-data
  --config FILE    cluster config (JSONC); overrides NETSY_CONFIG
  --validate FILE  check a config file and the node environment, print every
                   problem, then exit (1 if there is any)
  -v, --verbose    debug logging (also NETSY_DEBUG=true; RUST_LOG wins)
  -h, --help       this help; `netsy certs --help` and `netsy inspect --help` for theirs";

/// jemalloc instead of the C library's allocator: a request's buffers are
/// freed on other threads than the ones that made them, which glibc pays
/// for with arena locks and consolidation (about 15% of the node's CPU in
/// a 64-client put run went to malloc and free).
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's settings, read before `main`: two arenas rather than four
/// per CPU, and freed pages handed back to the system within a second by
/// its own thread, so the resident size follows what is in use (with the
/// defaults, 100,000 keys of 1 KiB left 229 MiB resident after a write run
/// against 196 MiB with these).
#[unsafe(export_name = "_rjem_malloc_conf")]
static MALLOC_CONF: Option<&'static libc::c_char> = Some(unsafe {
    // SAFETY: a C string literal lives as long as the program.
    &*c"background_thread:true,narenas:2,dirty_decay_ms:1000,muzzy_decay_ms:0".as_ptr()
});

/// `netsy --help`: the usage and every `NETSY_*` variable.
fn help() -> String {
    format!(
        "{USAGE}

Environment: the node's settings. Any other NETSY_* variable is a mistake:
netsy warns about it at start and `--validate` fails on it.
{}
Object storage reads the standard AWS variables (AWS_ENDPOINT_URL, AWS_REGION,
AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN,
AWS_S3_USE_PATH_STYLE); RUST_LOG sets log levels. The cluster config's keys
are described in deploy/config.jsonc; unknown keys are refused.",
        config::env_vars::help_table()
    )
}

const INSPECT_USAGE: &str = "usage: netsy inspect FILE
       netsy inspect --config FILE OBJECT-KEY

Prints a .netsy chunk or snapshot as JSON lines (header, records, footer)
with a CRC verdict; exits 1 if the file is corrupt.

  FILE                     a local .netsy file
  --config FILE OBJECT-KEY an object in the bucket of that cluster config
                           (e.g. snapshots/0000000000000000010.netsy)";

const CERTS_USAGE: &str = "usage: netsy certs --cluster ID --node ID [--node ID]... [--client NAME]... [--host HOST]... --out DIR [--days N]

Writes a development CA and the certificates of nodes and clients (keys
0600; a CA already in DIR is reused).

  --cluster ID    the cluster_id, the host of every netsy:// URI SAN
  --node ID       a node: DIR/ID/server.crt and DIR/ID/peer.crt with keys (repeatable)
  --client NAME   a client: DIR/client/NAME.crt and .key (repeatable)
  --host HOST     a DNS name or IP the server certificates are also valid for
                  (repeatable; localhost, 127.0.0.1 and ::1 always are)
  --out DIR       where to write them (DIR/ca.crt, DIR/ca.key, ...)
  --days N        certificate lifetime in days (default 365)";

/// Whether `args` ask for help.
fn wants_help(args: &[String]) -> bool {
    args.iter().any(|a| a == "-h" || a == "--help")
}

#[derive(Default)]
struct Cli {
    dev: bool,
    config: Option<String>,
    validate: Option<String>,
    version: bool,
    verbose: bool,
}

fn parse_args(args: &[String]) -> Result<Cli, String> {
    let mut cli = Cli::default();
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        let (flag, inline) = match arg.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f, Some(v.to_string())),
            _ => (arg.as_str(), None),
        };
        let mut value = |name: &str| -> Result<String, String> {
            inline
                .clone()
                .or_else(|| it.next().cloned())
                .ok_or_else(|| format!("{name} needs a value"))
        };
        match flag {
            "--dev" => cli.dev = true,
            "--config" | "-config" => cli.config = Some(value("--config")?),
            "--validate" | "-validate" => cli.validate = Some(value("--validate")?),
            "--version" | "-version" => cli.version = true,
            "-v" | "--verbose" => cli.verbose = true,
            "-h" | "--help" => return Err(String::new()),
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    Ok(cli)
}

/// Log lines name the node and its current role.
fn init_logging(debug: bool, node_id: &str, role: Arc<RoleCell>) {
    use std::io::Write;
    let default = if debug { "debug" } else { "info" };
    let node_id = node_id.to_string();
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(default))
        .format(move |buf, record| {
            writeln!(
                buf,
                "{} {:5} {} node={} role={} {}",
                buf.timestamp_millis(),
                record.level(),
                record.target(),
                node_id,
                role.log_name(),
                record.args()
            )
        })
        .init();
}

/// `netsy inspect`: a local .netsy file, or an object key in the bucket of
/// a cluster config.
fn inspect(args: &[String]) -> ExitCode {
    if wants_help(args) {
        println!("{INSPECT_USAGE}");
        return ExitCode::SUCCESS;
    }
    let (config, target) = match args {
        [file] => (None, file),
        [flag, config, key] if flag == "--config" => (Some(config), key),
        _ => {
            eprintln!("{INSPECT_USAGE}");
            return ExitCode::from(2);
        }
    };
    let bytes = match config {
        None => match std::fs::read(target) {
            Ok(b) => b,
            Err(e) => {
                eprintln!("Error: {target}: {e}");
                return ExitCode::from(1);
            }
        },
        Some(config) => {
            let fetched = config::read_cluster_config(std::path::Path::new(config))
                .map_err(|problems| problems.to_string())
                .and_then(|cluster| {
                    let env = |name: &str| std::env::var(name).ok();
                    let store =
                        netsy::objstore::from_config(&cluster.storage, &env, &Default::default())?;
                    let runtime = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                        .map_err(|e| e.to_string())?;
                    runtime
                        .block_on(store.get(target))
                        .map(|o| o.data.to_vec())
                        .map_err(|e| e.to_string())
                });
            match fetched {
                Ok(b) => b,
                Err(e) => {
                    eprintln!("Error: {e}");
                    return ExitCode::from(1);
                }
            }
        }
    };
    let stdout = std::io::stdout();
    match netsy::datafile::inspect::inspect(&bytes[..], &mut stdout.lock()) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("Error: {e}");
            ExitCode::from(1)
        }
    }
}

/// `netsy certs`: a development CA and the certificates of nodes and
/// clients (keys written 0600; an existing CA in DIR is reused).
fn certs(args: &[String]) -> ExitCode {
    if wants_help(args) {
        println!("{CERTS_USAGE}");
        return ExitCode::SUCCESS;
    }
    let (mut cluster, mut out, mut days) = (None, None, 365i64);
    let (mut nodes, mut clients, mut hosts) = (Vec::new(), Vec::new(), Vec::new());
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        let Some(value) = it.next() else {
            eprintln!("Error: {flag} needs a value\n{CERTS_USAGE}");
            return ExitCode::from(2);
        };
        match flag.as_str() {
            "--cluster" => cluster = Some(value.clone()),
            "--node" => nodes.push(value.clone()),
            "--client" => clients.push(value.clone()),
            "--host" => hosts.push(value.clone()),
            "--out" => out = Some(value.clone()),
            "--days" => match value.parse() {
                Ok(d) if d > 0 => days = d,
                _ => {
                    eprintln!("Error: --days must be a positive number of days");
                    return ExitCode::from(2);
                }
            },
            other => {
                eprintln!("Error: unknown argument {other:?}\n{CERTS_USAGE}");
                return ExitCode::from(2);
            }
        }
    }
    let (Some(cluster), Some(out)) = (cluster, out) else {
        eprintln!("Error: --cluster and --out are required\n{CERTS_USAGE}");
        return ExitCode::from(2);
    };
    let checked = std::iter::once(("--cluster", &cluster))
        .chain(nodes.iter().map(|n| ("--node", n)))
        .try_for_each(|(what, id)| config::identifier::validate(what, id));
    if let Err(e) = checked {
        eprintln!("Error: {e}");
        return ExitCode::from(2);
    }
    match netsy::tls::certs::write_cluster(
        std::path::Path::new(&out),
        &cluster,
        &nodes,
        &clients,
        &hosts,
        days,
    ) {
        Ok(files) => {
            for f in files {
                println!("{}", f.display());
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("Error: {e}");
            ExitCode::from(1)
        }
    }
}

/// glibc gives each thread that allocates an arena of its own, up to eight
/// per core, and memory freed in one stays there: the runtime's blocking
/// threads (file and SQLite work) each kept one, so after a run of
/// 100,000 puts of 1 KiB the node held about 250 MiB against about 195 MiB
/// with two arenas (benchmarks/README.md, "Restore and memory"). Set
/// before any thread starts.
fn limit_malloc_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator settings; no thread exists yet.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
}

fn main() -> ExitCode {
    limit_malloc_arenas();
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("inspect") => return inspect(&args[1..]),
        Some("certs") => return certs(&args[1..]),
        _ => {}
    }
    let cli = match parse_args(&args) {
        Ok(c) => c,
        Err(e) if e.is_empty() => {
            println!("{}", help());
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("Error: {e}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    if cli.version {
        println!(
            "netsy {} (commit {}, built {})",
            env!("CARGO_PKG_VERSION"),
            env!("BUILD_GIT_COMMIT"),
            env!("BUILD_DATE")
        );
        return ExitCode::SUCCESS;
    }
    let env = |name: &str| std::env::var(name).ok();
    // Names that are not UTF-8 cannot be netsy's, and are skipped.
    let env_names: Vec<String> = std::env::vars_os()
        .filter_map(|(name, _)| name.into_string().ok())
        .collect();
    let env_names = env_names.iter().map(String::as_str);
    if let Some(path) = &cli.validate {
        return match config::validate(cli.dev, Some(path), &env, env_names) {
            Ok(_) => {
                println!("Config is valid.");
                ExitCode::SUCCESS
            }
            Err(problems) => {
                for problem in &problems.0 {
                    eprintln!("Validation failed: {problem}");
                }
                ExitCode::from(1)
            }
        };
    }
    let cfg = match config::load(cli.dev, cli.config.as_deref(), &env) {
        Ok(c) => c,
        Err(problems) => {
            for problem in &problems.0 {
                eprintln!("Error: {problem}");
            }
            return ExitCode::from(1);
        }
    };
    let role = Arc::new(RoleCell::default());
    init_logging(
        cli.verbose || cfg.node.debug,
        &cfg.node.node_id,
        role.clone(),
    );
    // A misspelt variable is otherwise silently ignored; one line each.
    for problem in config::env_vars::unknown(env_names) {
        log::warn!("{problem}");
    }
    // A test whose fault point does not parse would test nothing.
    match netsy::failpoint::init() {
        Ok(warnings) => warnings.iter().for_each(|w| log::warn!("{w}")),
        Err(errors) => {
            for e in &errors {
                eprintln!("Error: {e}");
            }
            return ExitCode::from(1);
        }
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("Error: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let result = runtime.block_on(async {
        let shutdown = shutdown_signal();
        netsy::node::run(cfg, role, shutdown).await
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            log::error!("{e}");
            eprintln!("Error: {e}");
            ExitCode::from(1)
        }
    }
}

/// Traps SIGTERM and SIGINT at once (a signal that arrives while the node
/// starts is then not the default "terminate"); the returned future
/// resolves on the first one, and a second one exits at once.
fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    use tokio::signal::unix::{signal, SignalKind};
    let trapped = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    );
    async move {
        let (Ok(mut term), Ok(mut int)) = trapped else {
            log::warn!("cannot install signal handlers; stop with SIGKILL");
            std::future::pending::<()>().await;
            return;
        };
        tokio::select! {
            _ = term.recv() => log::info!("SIGTERM received"),
            _ = int.recv() => log::info!("SIGINT received"),
        }
        tokio::spawn(async move {
            tokio::select! {
                _ = term.recv() => {},
                _ = int.recv() => {},
            }
            log::warn!("second signal: exiting now");
            std::process::exit(1);
        });
    }
}
