// The partition key names one of the task's arguments.

#[castor_abi::task(thread, concurrency = 1, concurrency_key = customer)]
pub fn invoice(customer_id: u64, amount: i64) {
    let _ = (customer_id, amount);
}

fn main() {}
