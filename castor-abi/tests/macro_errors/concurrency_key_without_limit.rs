// A partition key partitions a concurrency limit: without one it would do nothing.

#[castor_abi::task(thread, concurrency_key = customer_id)]
pub fn invoice(customer_id: u64, amount: i64) {
    let _ = (customer_id, amount);
}

fn main() {}
