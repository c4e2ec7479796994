// A task's arguments are stored and read back in another process: they must be owned.

#[castor_abi::task(thread)]
pub fn greet(name: &str) -> String {
    format!("hello {name}")
}

fn main() {}
