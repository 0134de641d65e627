//! A stream-table join with `eventflow::streams`: each order enriched with its customer's
//! name.
//!
//! Start a broker, then:
//! `cargo run --example streams_join -- [ADDR]`
//!
//! It creates `customers`, `orders` and `orders-enriched` (3 partitions each, fresh names
//! per run; the same partition count and keyed records under the default partitioner make
//! them co-partitioned), writes three customers (id → name), then five orders keyed by
//! customer id (one for an unknown customer) as JSON. The application left-joins each order
//! with the customers table and writes the order with a `customer` field (`null` when the
//! customer is unknown), stops after 3 s without input, and the example prints and checks
//! the enriched orders.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use eventflow::client::consumer::{Consumer, ConsumerConfig, StartAt};
use eventflow::client::producer::{Producer, ProducerConfig, Record};
use eventflow::client::Client;
use eventflow::protocol::api::offset_spec;
use eventflow::streams::{Serde, Streams, StreamsConfig};
use serde_json::{json, Value};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:9292".into());
    let run = SystemTime::now().duration_since(UNIX_EPOCH)?.as_millis();
    let customers = format!("customers-{run}");
    let orders = format!("orders-{run}");
    let enriched = format!("orders-enriched-{run}");
    let mut admin = Client::connect(addr.as_str())?;
    for topic in [&customers, &orders, &enriched] {
        admin.create_topic(topic, 3, &[])?;
    }

    let producer = Producer::new(ProducerConfig {
        bootstrap: addr.clone(),
        ..ProducerConfig::default()
    })?;
    for (id, name) in [("c1", "Ada"), ("c2", "Grace"), ("c3", "Edsger")] {
        producer.send(Record {
            topic: &customers,
            key: Some(id.as_bytes()),
            value: Some(name.as_bytes()),
            ..Record::default()
        })?;
    }
    let placed = [("c1", 10), ("c2", 25), ("c1", 7), ("c9", 3), ("c3", 42)];
    for (n, (customer, amount)) in placed.iter().enumerate() {
        let order = json!({"order": n, "amount": amount});
        producer.send(Record {
            topic: &orders,
            key: Some(customer.as_bytes()),
            value: Some(&order.to_bytes()),
            ..Record::default()
        })?;
    }
    producer.flush()?;
    println!(
        "produced 3 customers to {customers} and {} orders to {orders}",
        placed.len()
    );

    let mut config = StreamsConfig::new(&format!("enrich-orders-{run}"), &addr);
    config.stop_when_idle = Some(Duration::from_secs(3));
    let (table, stream, sink) = (customers.clone(), orders.clone(), enriched.clone());
    let stats = Streams::start(config, move |builder| {
        let customers = builder.table::<String, String>(&table);
        builder
            .stream::<String, Value>(&[&stream])
            .left_join(&customers, |_, mut order, name| {
                order["customer"] = name.map_or(Value::Null, Value::String);
                order
            })
            .to(&sink);
    })?
    .wait()?;
    println!("application stopped: {stats:?}");

    let mut consumer = Consumer::new(ConsumerConfig {
        bootstrap: addr.clone(),
        ..ConsumerConfig::default()
    })?;
    consumer.assign(&enriched, &[0, 1, 2], StartAt::Earliest)?;
    let mut ends = Vec::new();
    for p in 0..3 {
        ends.push(admin.list_offset(&enriched, p, offset_spec::LATEST)?);
    }
    let mut out = Vec::new();
    while (0..3).any(|p| consumer.position(&enriched, p).unwrap_or(0) < ends[p as usize]) {
        for r in consumer.poll(Duration::from_millis(500))? {
            out.push(Value::from_bytes(&r.value.unwrap_or_default())?);
        }
    }
    out.sort_by_key(|o| o["order"].as_u64());
    for order in &out {
        println!("{order}");
    }
    let names: Vec<Value> = out.iter().map(|o| o["customer"].clone()).collect();
    let expected = [
        json!("Ada"),
        json!("Grace"),
        json!("Ada"),
        Value::Null,
        json!("Edsger"),
    ];
    if names != expected {
        return Err(format!("expected customers {expected:?}, got {names:?}").into());
    }
    println!("every order carries its customer's name (null for the unknown one)");
    Ok(())
}
