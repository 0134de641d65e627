//! `eventflow`: the command-line client — topics, produce, consume.

use std::io::{BufRead, Write};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use clap::{Args, Parser, Subcommand};
use eventflow::client::consumer::{Consumer, ConsumerConfig, ConsumerRecord, StartAt};
use eventflow::client::producer::{Producer, ProducerConfig, Record};
use eventflow::client::Client;
use eventflow::protocol::api::Acks;

/// The Eventflow command-line client.
#[derive(Parser, Debug)]
#[command(name = "eventflow", version)]
struct Cli {
    /// Broker address.
    #[arg(
        long,
        global = true,
        env = "EVENTFLOW_BOOTSTRAP",
        default_value = "127.0.0.1:9092"
    )]
    bootstrap: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Create, list, describe, alter and delete topics.
    #[command(subcommand)]
    Topic(TopicCommand),
    /// Produce one record per line of standard input (or of --file).
    Produce(ProduceArgs),
    /// Print records of a topic.
    Consume(ConsumeArgs),
}

#[derive(Subcommand, Debug)]
enum TopicCommand {
    /// Create a topic.
    Create {
        /// Topic name.
        name: String,
        /// Number of partitions.
        #[arg(long, default_value_t = 1)]
        partitions: u32,
        /// A config override `key=value` (retention.ms, retention.bytes, segment.bytes,
        /// segment.ms); repeatable.
        #[arg(long = "config", value_name = "KEY=VALUE")]
        configs: Vec<String>,
    },
    /// List topics and their partition counts.
    List,
    /// Show partitions (owning shard, earliest and latest offsets, size) and configs.
    Describe {
        /// Topic name.
        name: String,
    },
    /// Set config overrides.
    Alter {
        /// Topic name.
        name: String,
        /// `key=value`; repeatable.
        #[arg(long = "config", value_name = "KEY=VALUE", required = true)]
        configs: Vec<String>,
    },
    /// Delete a topic and its data.
    Delete {
        /// Topic name.
        name: String,
    },
}

#[derive(Args, Debug)]
struct ProduceArgs {
    /// Topic.
    topic: String,
    /// Read records from this file instead of standard input.
    #[arg(long)]
    file: Option<std::path::PathBuf>,
    /// Split each line at the first SEP into key and value (no SEP in a line: no key).
    #[arg(long, value_name = "SEP")]
    key_separator: Option<String>,
    /// Send every record to this partition (default: by key with murmur2, sticky without).
    #[arg(long)]
    partition: Option<u32>,
    /// Acknowledgements: 0, 1 or all.
    #[arg(long, default_value = "all")]
    acks: String,
    /// A header `key=value` added to every record; repeatable.
    #[arg(long = "header", value_name = "KEY=VALUE")]
    headers: Vec<String>,
    /// Batch size in bytes.
    #[arg(long, default_value_t = 16 * 1024)]
    batch_size: usize,
    /// How long a batch waits for more records, in ms.
    #[arg(long, default_value_t = 5)]
    linger_ms: u64,
}

#[derive(Args, Debug)]
struct ConsumeArgs {
    /// Topic.
    topic: String,
    /// Start at the earliest stored record (default: only new records).
    #[arg(long, conflicts_with_all = ["offset", "from_time"])]
    from_beginning: bool,
    /// Start at an offset: a number, `earliest` or `latest`.
    #[arg(long, conflicts_with = "from_time")]
    offset: Option<String>,
    /// Start at the first record at or after this time (ms since the epoch).
    #[arg(long)]
    from_time: Option<i64>,
    /// Read only this partition (default: all).
    #[arg(long)]
    partition: Option<u32>,
    /// Exit after this many records.
    #[arg(long)]
    max_messages: Option<u64>,
    /// Exit when no record arrives for this many ms.
    #[arg(long)]
    timeout_ms: Option<u64>,
    /// Output format: %t topic, %p partition, %o offset, %T timestamp, %k key, %v value,
    /// %h headers (k=v,…), %% a percent sign; \n and \t escapes.
    #[arg(long, default_value = "%v\\n", conflicts_with = "json")]
    format: String,
    /// One JSON object per record (topic, partition, offset, timestamp, key, value,
    /// headers).
    #[arg(long)]
    json: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("eventflow: error: {}", one_line(&e));
            ExitCode::FAILURE
        }
    }
}

/// The error and its causes on one line; a cause already quoted by its parent's message
/// is not repeated.
fn one_line(e: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if line.contains(&text) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(&text);
    }
    line.replace('\n', " ")
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Topic(cmd) => topic(&cli.bootstrap, cmd).map(|()| ExitCode::SUCCESS),
        Command::Produce(args) => produce(&cli.bootstrap, args),
        Command::Consume(args) => consume(&cli.bootstrap, args).map(|()| ExitCode::SUCCESS),
    }
}

fn key_value(s: &str) -> anyhow::Result<(String, String)> {
    s.split_once('=')
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .ok_or_else(|| anyhow!("`{s}` is not KEY=VALUE"))
}

fn topic(bootstrap: &str, cmd: TopicCommand) -> anyhow::Result<()> {
    let mut client = Client::connect(bootstrap).context("cannot reach the broker")?;
    let pairs = |configs: &[String]| {
        configs
            .iter()
            .map(|c| key_value(c))
            .collect::<anyhow::Result<Vec<_>>>()
    };
    match cmd {
        TopicCommand::Create {
            name,
            partitions,
            configs,
        } => {
            let configs = pairs(&configs)?;
            let refs: Vec<(&str, &str)> = configs
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect();
            client.create_topic(&name, partitions, &refs)?;
            println!("created topic {name} with {partitions} partitions");
        }
        TopicCommand::List => {
            for t in client.list_topics()? {
                println!("{}\t{}", t.name, t.partitions);
            }
        }
        TopicCommand::Describe { name } => {
            let d = client.describe_topic(&name)?;
            println!("topic {}  partitions {}", d.name, d.partitions.len());
            println!("partition\tshard\tearliest\tlatest\tbytes");
            for p in &d.partitions {
                println!(
                    "{}\t{}\t{}\t{}\t{}",
                    p.partition, p.shard, p.log_start_offset, p.high_watermark, p.size_bytes
                );
            }
            println!("configs");
            for (k, v) in &d.configs {
                println!("  {k}={v}");
            }
        }
        TopicCommand::Alter { name, configs } => {
            let configs = pairs(&configs)?;
            let refs: Vec<(&str, &str)> = configs
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect();
            client.alter_topic_config(&name, &refs)?;
            println!("altered topic {name}");
        }
        TopicCommand::Delete { name } => {
            client.delete_topic(&name)?;
            println!("deleted topic {name}");
        }
    }
    Ok(())
}

fn produce(bootstrap: &str, args: ProduceArgs) -> anyhow::Result<ExitCode> {
    let acks = match args.acks.as_str() {
        "0" => Acks::None,
        "1" => Acks::Leader,
        "all" | "-1" => Acks::All,
        other => bail!("--acks must be 0, 1 or all, not `{other}`"),
    };
    let headers = args
        .headers
        .iter()
        .map(|h| key_value(h))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let header_refs: Vec<(&[u8], Option<&[u8]>)> = headers
        .iter()
        .map(|(k, v)| (k.as_bytes(), Some(v.as_bytes())))
        .collect();
    let producer = Producer::new(ProducerConfig {
        bootstrap: bootstrap.to_string(),
        acks,
        batch_bytes: args.batch_size,
        linger: Duration::from_millis(args.linger_ms),
        ..ProducerConfig::default()
    })
    .context("cannot reach the broker")?;
    let input: Box<dyn BufRead> = match &args.file {
        Some(path) => Box::new(std::io::BufReader::new(
            std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?,
        )),
        None => Box::new(std::io::stdin().lock()),
    };
    let mut deliveries = Vec::new();
    for line in input.lines() {
        let line = line.context("reading input")?;
        let (key, value) = match &args.key_separator {
            Some(sep) => match line.split_once(sep.as_str()) {
                Some((k, v)) => (Some(k.to_string()), v.to_string()),
                None => (None, line),
            },
            None => (None, line),
        };
        let sent = producer.send(Record {
            topic: &args.topic,
            partition: args.partition,
            key: key.as_deref().map(str::as_bytes),
            value: Some(value.as_bytes()),
            headers: &header_refs,
            timestamp: None,
        })?;
        deliveries.push(sent);
    }
    producer.flush()?;
    let total = deliveries.len();
    let mut failed = 0;
    let mut first_error = None;
    for d in deliveries {
        if let Err(e) = d.wait() {
            failed += 1;
            first_error.get_or_insert(e.to_string());
        }
    }
    eprintln!(
        "produced {} of {total} records to {}",
        total - failed,
        args.topic
    );
    if let Some(e) = first_error {
        eprintln!("eventflow: error: {failed} records failed; first: {e}");
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_interrupt(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

fn consume(bootstrap: &str, args: ConsumeArgs) -> anyhow::Result<()> {
    let start = if args.from_beginning {
        StartAt::Earliest
    } else if let Some(ts) = args.from_time {
        StartAt::Timestamp(ts)
    } else {
        match args.offset.as_deref() {
            None | Some("latest") => StartAt::Latest,
            Some("earliest") => StartAt::Earliest,
            Some(n) => StartAt::Offset(
                n.parse()
                    .map_err(|_| anyhow!("--offset must be a number, earliest or latest"))?,
            ),
        }
    };
    let partitions: Vec<u32> = match args.partition {
        Some(p) => vec![p],
        None => {
            let mut client = Client::connect(bootstrap).context("cannot reach the broker")?;
            let d = client.describe_topic(&args.topic)?;
            d.partitions.iter().map(|p| p.partition).collect()
        }
    };
    let mut consumer = Consumer::new(ConsumerConfig {
        bootstrap: bootstrap.to_string(),
        ..ConsumerConfig::default()
    })
    .context("cannot reach the broker")?;
    consumer.assign(&args.topic, &partitions, start)?;

    // Ctrl-C stops the loop; the count is printed as the consumer leaves.
    // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
    unsafe {
        libc::signal(
            libc::SIGINT,
            on_interrupt as *const () as libc::sighandler_t,
        )
    };
    let template = parse_format(&args.format);
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    let mut count: u64 = 0;
    let mut last_record = Instant::now();
    let idle_limit = args.timeout_ms.map(Duration::from_millis);
    'consume: while !INTERRUPTED.load(Ordering::SeqCst) {
        let records = consumer.poll(Duration::from_millis(200))?;
        if records.is_empty() {
            out.flush()?;
            if idle_limit.is_some_and(|limit| last_record.elapsed() >= limit) {
                break;
            }
            continue;
        }
        last_record = Instant::now();
        for r in &records {
            if args.json {
                writeln!(out, "{}", to_json(r))?;
            } else {
                write_formatted(&mut out, &template, r)?;
            }
            count += 1;
            if args.max_messages.is_some_and(|max| count >= max) {
                break 'consume;
            }
        }
    }
    out.flush()?;
    eprintln!("consumed {count} records");
    Ok(())
}

/// A parsed `--format` template.
#[derive(Debug, PartialEq, Eq)]
enum Piece {
    Text(String),
    Topic,
    Partition,
    Offset,
    Timestamp,
    Key,
    Value,
    Headers,
}

fn parse_format(format: &str) -> Vec<Piece> {
    let mut pieces = Vec::new();
    let mut text = String::new();
    let mut chars = format.chars().peekable();
    while let Some(c) = chars.next() {
        let field = match (c, chars.peek().copied()) {
            ('%', Some(n)) => match n {
                't' => Some(Piece::Topic),
                'p' => Some(Piece::Partition),
                'o' => Some(Piece::Offset),
                'T' => Some(Piece::Timestamp),
                'k' => Some(Piece::Key),
                'v' => Some(Piece::Value),
                'h' => Some(Piece::Headers),
                '%' => {
                    text.push('%');
                    chars.next();
                    continue;
                }
                _ => None,
            },
            ('\\', Some('n')) => {
                text.push('\n');
                chars.next();
                continue;
            }
            ('\\', Some('t')) => {
                text.push('\t');
                chars.next();
                continue;
            }
            _ => None,
        };
        match field {
            Some(piece) => {
                chars.next();
                if !text.is_empty() {
                    pieces.push(Piece::Text(std::mem::take(&mut text)));
                }
                pieces.push(piece);
            }
            None => text.push(c),
        }
    }
    if !text.is_empty() {
        pieces.push(Piece::Text(text));
    }
    pieces
}

fn write_formatted(
    out: &mut impl Write,
    template: &[Piece],
    r: &ConsumerRecord,
) -> std::io::Result<()> {
    for piece in template {
        match piece {
            Piece::Text(t) => out.write_all(t.as_bytes())?,
            Piece::Topic => out.write_all(r.topic.as_bytes())?,
            Piece::Partition => write!(out, "{}", r.partition)?,
            Piece::Offset => write!(out, "{}", r.offset)?,
            Piece::Timestamp => write!(out, "{}", r.timestamp)?,
            Piece::Key => out.write_all(r.key.as_deref().unwrap_or_default())?,
            Piece::Value => out.write_all(r.value.as_deref().unwrap_or_default())?,
            Piece::Headers => {
                for (i, (k, v)) in r.headers.iter().enumerate() {
                    if i > 0 {
                        out.write_all(b",")?;
                    }
                    out.write_all(k)?;
                    out.write_all(b"=")?;
                    out.write_all(v.as_deref().unwrap_or_default())?;
                }
            }
        }
    }
    Ok(())
}

fn to_json(r: &ConsumerRecord) -> serde_json::Value {
    let text = |b: &Option<bytes::Bytes>| match b {
        Some(b) => serde_json::Value::String(String::from_utf8_lossy(b).into_owned()),
        None => serde_json::Value::Null,
    };
    let headers: serde_json::Map<String, serde_json::Value> = r
        .headers
        .iter()
        .map(|(k, v)| (String::from_utf8_lossy(k).into_owned(), text(v)))
        .collect();
    serde_json::json!({
        "topic": &*r.topic,
        "partition": r.partition,
        "offset": r.offset,
        "timestamp": r.timestamp,
        "key": text(&r.key),
        "value": text(&r.value),
        "headers": headers,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record() -> ConsumerRecord {
        ConsumerRecord {
            topic: "t".into(),
            partition: 2,
            offset: 41,
            timestamp: 1_700_000_000_000,
            key: Some(bytes::Bytes::from_static(b"k1")),
            value: Some(bytes::Bytes::from_static(b"hello")),
            headers: vec![(
                bytes::Bytes::from_static(b"h"),
                Some(bytes::Bytes::from_static(b"x")),
            )],
        }
    }

    fn render(format: &str) -> String {
        let mut out = Vec::new();
        write_formatted(&mut out, &parse_format(format), &record()).unwrap();
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn formats_like_kcat() {
        assert_eq!(render("%v\\n"), "hello\n");
        assert_eq!(
            render("%k:%v@%p/%o %T [%h] %t 100%% %q"),
            "k1:hello@2/41 1700000000000 [h=x] t 100% %q"
        );
        assert_eq!(render("\\t%o"), "\t41");
    }

    #[test]
    fn json_has_every_field() {
        let j = to_json(&record()).to_string();
        assert_eq!(
            j,
            r#"{"headers":{"h":"x"},"key":"k1","offset":41,"partition":2,"timestamp":1700000000000,"topic":"t","value":"hello"}"#
        );
    }
}
